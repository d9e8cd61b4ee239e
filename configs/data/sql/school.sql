-- A small school: teachers teach courses, students enrol in courses for a term.
-- A course with teacher_id NULL has no teacher assigned yet; an enrollment with grade NULL
-- has not been graded yet (grades are 0-100). Dates are ISO text (YYYY-MM-DD).
PRAGMA foreign_keys = ON;

CREATE TABLE teachers (
    teacher_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    department TEXT NOT NULL,
    hire_date TEXT NOT NULL,
    salary INTEGER NOT NULL
);

CREATE TABLE courses (
    course_id INTEGER PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    department TEXT NOT NULL,
    credits INTEGER NOT NULL,
    teacher_id INTEGER REFERENCES teachers (teacher_id)
);

CREATE TABLE students (
    student_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    year_level INTEGER NOT NULL CHECK (year_level BETWEEN 1 AND 4),
    email TEXT
);

CREATE TABLE enrollments (
    student_id INTEGER NOT NULL REFERENCES students (student_id),
    course_id INTEGER NOT NULL REFERENCES courses (course_id),
    term TEXT NOT NULL,
    grade INTEGER,
    PRIMARY KEY (student_id, course_id)
);

INSERT INTO teachers (teacher_id, name, department, hire_date, salary) VALUES
    (1, 'Helen Carter', 'Mathematics', '2010-08-15', 72000),
    (2, 'James Okoye', 'Physics', '2015-01-10', 65000),
    (3, 'Laura Chen', 'Computer Science', '2018-08-20', 78000),
    (4, 'Robert Alvarez', 'History', '2005-09-01', 81000),
    (5, 'Nadia Hassan', 'Literature', '2012-08-25', 64000),
    (6, 'Peter Lindqvist', 'Mathematics', '2020-01-06', 58000),
    (7, 'Sarah Mills', 'Biology', '2008-08-18', 76000),
    (8, 'Aiko Tanaka', 'Computer Science', '2021-08-23', 70000),
    (9, 'Tom Reyes', 'Chemistry', '2016-08-29', 65000),
    (10, 'Grace Obi', 'Chemistry', '2023-01-09', 62000);

INSERT INTO courses (course_id, code, title, department, credits, teacher_id) VALUES
    (1, 'MATH101', 'Calculus I', 'Mathematics', 4, 1),
    (2, 'MATH201', 'Linear Algebra', 'Mathematics', 3, 1),
    (3, 'MATH150', 'Statistics', 'Mathematics', 3, 6),
    (4, 'PHYS101', 'Mechanics', 'Physics', 4, 2),
    (5, 'PHYS202', 'Electromagnetism', 'Physics', 4, 2),
    (6, 'CS101', 'Intro to Programming', 'Computer Science', 4, 3),
    (7, 'CS201', 'Data Structures', 'Computer Science', 4, 8),
    (8, 'CS310', 'Databases', 'Computer Science', 3, 3),
    (9, 'HIST110', 'World History', 'History', 3, 4),
    (10, 'HIST220', 'Modern Europe', 'History', 3, 4),
    (11, 'LIT100', 'Poetry and Prose', 'Literature', 2, 5),
    (12, 'LIT210', 'The Novel', 'Literature', 3, 5),
    (13, 'BIO101', 'Cell Biology', 'Biology', 4, 7),
    (14, 'BIO230', 'Genetics', 'Biology', 3, 7),
    (15, 'CHEM101', 'General Chemistry', 'Chemistry', 4, 9),
    (16, 'CS350', 'Machine Learning', 'Computer Science', 3, NULL),
    (17, 'PHYS310', 'Quantum Physics', 'Physics', 3, 2);

INSERT INTO students (student_id, name, birth_date, year_level, email) VALUES
    (1, 'Aaron Blake', '2004-03-12', 2, 'aaron@school.edu'),
    (2, 'Bella Cruz', '2005-07-22', 1, 'bella@school.edu'),
    (3, 'Caleb Dunn', '2003-11-02', 3, NULL),
    (4, 'Diana Evans', '2002-01-30', 4, 'diana@school.edu'),
    (5, 'Ethan Ford', '2004-09-14', 2, 'ethan@school.edu'),
    (6, 'Fiona Gray', '2005-02-05', 1, NULL),
    (7, 'George Hill', '2003-06-18', 3, 'george@school.edu'),
    (8, 'Hana Ito', '2002-12-25', 4, 'hana@school.edu'),
    (9, 'Isaac Jones', '2004-04-08', 2, 'isaac@school.edu'),
    (10, 'Jade King', '2005-10-30', 1, 'jade@school.edu'),
    (11, 'Kevin Lopez', '2003-08-09', 3, NULL),
    (12, 'Lena Moore', '2002-05-17', 4, 'lena@school.edu'),
    (13, 'Mason Nash', '2004-12-01', 2, 'mason@school.edu'),
    (14, 'Nora Owens', '2005-03-27', 1, 'nora@school.edu'),
    (15, 'Omar Patel', '2003-02-14', 3, 'omar@school.edu'),
    (16, 'Piper Quinn', '2002-09-03', 4, NULL),
    (17, 'Ryan Scott', '2004-07-07', 2, 'ryan@school.edu'),
    (18, 'Sofia Torres', '2005-05-19', 1, 'sofia@school.edu'),
    (19, 'Theo Underwood', '2003-10-11', 3, 'theo@school.edu'),
    (20, 'Uma Vance', '2002-03-29', 4, 'uma@school.edu'),
    (21, 'Victor White', '2005-12-12', 1, NULL),
    (22, 'Willa Young', '2004-01-23', 2, 'willa@school.edu');

INSERT INTO enrollments (student_id, course_id, term, grade) VALUES
    (1, 1, '2023-Fall', 88),
    (1, 6, '2023-Fall', 92),
    (1, 2, '2024-Spring', NULL),
    (2, 1, '2023-Fall', 75),
    (2, 11, '2023-Fall', 81),
    (2, 6, '2024-Spring', NULL),
    (3, 4, '2023-Fall', 67),
    (3, 9, '2023-Fall', 72),
    (3, 5, '2024-Spring', NULL),
    (4, 8, '2023-Fall', 95),
    (4, 7, '2023-Fall', 89),
    (4, 16, '2024-Spring', NULL),
    (5, 6, '2023-Fall', 58),
    (5, 3, '2023-Fall', 64),
    (5, 7, '2024-Spring', NULL),
    (6, 13, '2023-Fall', 83),
    (6, 11, '2023-Fall', 90),
    (7, 10, '2023-Fall', 77),
    (7, 12, '2023-Fall', 85),
    (7, 9, '2024-Spring', NULL),
    (8, 14, '2023-Fall', 91),
    (8, 13, '2023-Fall', 94),
    (8, 15, '2024-Spring', NULL),
    (9, 2, '2023-Fall', 70),
    (9, 4, '2023-Fall', 73),
    (10, 6, '2023-Fall', 99),
    (10, 1, '2023-Fall', 96),
    (11, 15, '2023-Fall', 45),
    (11, 3, '2024-Spring', NULL),
    (12, 8, '2023-Fall', 88),
    (12, 16, '2024-Spring', NULL),
    (13, 9, '2023-Fall', 62),
    (13, 10, '2023-Fall', 68),
    (14, 11, '2023-Fall', 79),
    (14, 12, '2024-Spring', NULL),
    (15, 5, '2023-Fall', 84),
    (15, 2, '2023-Fall', 80),
    (16, 14, '2023-Fall', 87),
    (16, 13, '2024-Spring', NULL),
    (17, 1, '2023-Fall', 55),
    (17, 15, '2023-Fall', 61),
    (18, 6, '2023-Fall', 88),
    (18, 3, '2023-Fall', 93),
    (19, 7, '2023-Fall', 76),
    (19, 8, '2024-Spring', NULL),
    (20, 10, '2023-Fall', 90),
    (20, 12, '2023-Fall', 86),
    (20, 9, '2023-Fall', 82);
